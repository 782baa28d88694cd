from django.urls import path

from replica import views

urlpatterns = [
    path('', views.report, name='report'),
]
