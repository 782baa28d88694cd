"""The CQRS_SERIALIZER of Author: a plain DRF serializer, nesting the publisher."""

from rest_framework import serializers

from catalog.models import Author, Publisher


class PublisherSerializer(serializers.ModelSerializer):
    class Meta:
        model = Publisher
        fields = ['id', 'name']


class AuthorSerializer(serializers.ModelSerializer):
    publisher = PublisherSerializer(read_only=True)

    class Meta:
        model = Author
        fields = ['id', 'name', 'publisher']
