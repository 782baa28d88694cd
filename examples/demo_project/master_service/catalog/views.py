"""Plain server-rendered pages: every create / edit / delete here is published to the replica."""

from django.contrib import messages
from django.urls import reverse_lazy
from django.views import generic

from catalog.models import Author, Book, Publisher

BOOK_FIELDS = ['title', 'author', 'price']


class BookList(generic.ListView):
    queryset = Book.objects.select_related('author__publisher')


class BookCreate(generic.CreateView):
    model = Book
    fields = BOOK_FIELDS
    success_url = reverse_lazy('book-list')

    def form_valid(self, form):
        response = super().form_valid(form)
        messages.success(self.request, f'Created "{self.object}" (published as revision 0).')
        return response


class BookUpdate(generic.UpdateView):
    model = Book
    fields = BOOK_FIELDS
    success_url = reverse_lazy('book-list')

    def form_valid(self, form):
        response = super().form_valid(form)
        self.object.refresh_from_db(fields=['cqrs_revision'])
        messages.success(
            self.request,
            f'Saved "{self.object}" (published as revision {self.object.cqrs_revision}).',
        )
        return response


class BookDelete(generic.DeleteView):
    model = Book
    success_url = reverse_lazy('book-list')

    def form_valid(self, form):
        title = str(self.object)
        response = super().form_valid(form)
        messages.success(self.request, f'Deleted "{title}" (a DELETE message was published).')
        return response


class AuthorList(generic.ListView):
    queryset = Author.objects.select_related('publisher')


class PublisherList(generic.ListView):
    model = Publisher
