from rest_framework import serializers

from tests.dj_master.models import Author, Publisher


class PublisherSerializer(serializers.ModelSerializer):
    class Meta:
        model = Publisher
        fields = ('id', 'name')


class AuthorSerializer(serializers.ModelSerializer):
    publisher = PublisherSerializer(allow_null=True)

    class Meta:
        model = Author
        fields = ('id', 'name', 'publisher')
