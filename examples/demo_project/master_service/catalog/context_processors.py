from django.conf import settings


def demo_links(request):
    """Link from the master's pages to the replica's report page."""
    return {'replica_url': settings.DEMO_REPLICA_URL}
