from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ('dj_cqrs', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='cqrsoutboxmessage',
            name='failed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
