from django.contrib import admin
from django.urls import path

from replica import views

urlpatterns = [
    path('admin/', admin.site.urls),
    path('', views.report, name='report'),
]
