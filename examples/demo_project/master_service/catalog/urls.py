from django.urls import path

from catalog import views

urlpatterns = [
    path('', views.BookList.as_view(), name='book-list'),
    path('books/new/', views.BookCreate.as_view(), name='book-create'),
    path('books/<int:pk>/edit/', views.BookUpdate.as_view(), name='book-update'),
    path('books/<int:pk>/delete/', views.BookDelete.as_view(), name='book-delete'),
    path('authors/', views.AuthorList.as_view(), name='author-list'),
    path('publishers/', views.PublisherList.as_view(), name='publisher-list'),
]
