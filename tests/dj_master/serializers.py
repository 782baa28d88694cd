from rest_framework import serializers

from tests.dj_master.models import Author, Publisher, TrackedAllModel


class PublisherSerializer(serializers.ModelSerializer):
    class Meta:
        model = Publisher
        fields = ('id', 'name')


class AuthorSerializer(serializers.ModelSerializer):
    publisher = PublisherSerializer(allow_null=True)

    class Meta:
        model = Author
        fields = ('id', 'name', 'publisher')


class TrackedAllSerializer(serializers.ModelSerializer):
    amount = serializers.DecimalField(
        max_digits=10, decimal_places=2, coerce_to_string=False, allow_null=True
    )

    class Meta:
        model = TrackedAllModel
        fields = ('id', 'name', 'amount')
