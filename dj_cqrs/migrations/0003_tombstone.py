from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ('dj_cqrs', '0002_outbox_failed'),
    ]

    operations = [
        migrations.CreateModel(
            name='CQRSTombstone',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('cqrs_id', models.CharField(max_length=255)),
                ('instance_pk', models.CharField(max_length=255)),
                ('cqrs_revision', models.BigIntegerField(null=True)),
                ('cqrs_updated', models.DateTimeField(null=True)),
                ('created', models.DateTimeField(db_index=True)),
            ],
            options={
                'verbose_name': 'CQRS tombstone',
                'db_table': 'dj_cqrs_tombstone',
                'constraints': [
                    models.UniqueConstraint(
                        fields=('cqrs_id', 'instance_pk'), name='dj_cqrs_tombstone_cqrs_id_pk'
                    )
                ],
            },
        ),
    ]
