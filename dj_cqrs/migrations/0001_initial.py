from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name='CQRSOutboxMessage',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('created', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('cqrs_id', models.CharField(max_length=255)),
                ('instance_pk', models.CharField(max_length=255)),
                ('signal_type', models.CharField(max_length=6)),
                ('queue', models.CharField(blank=True, max_length=255, null=True)),
                ('previous_data', models.JSONField(blank=True, null=True)),
                ('payload', models.JSONField(blank=True, null=True)),
            ],
            options={
                'verbose_name': 'CQRS outbox message',
                'db_table': 'dj_cqrs_outbox',
                'ordering': ('id',),
            },
        ),
    ]
