from rest_framework import serializers

from tests.compat_project.models import Author


class AuthorSerializer(serializers.ModelSerializer):
    """The message of an author carries its account, nested."""

    account = serializers.SerializerMethodField()

    class Meta:
        model = Author
        fields = ('id', 'name', 'account')

    def get_account(self, obj):
        if obj.account is None:
            return None
        return {'id': obj.account.id, 'name': obj.account.name}
