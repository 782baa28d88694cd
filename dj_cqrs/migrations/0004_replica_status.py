from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ('dj_cqrs', '0003_tombstone'),
    ]

    operations = [
        migrations.CreateModel(
            name='CQRSReplicaStatus',
            fields=[
                ('cqrs_id', models.CharField(max_length=255, primary_key=True, serialize=False)),
                ('last_applied', models.DateTimeField()),
                ('last_master_updated', models.DateTimeField(null=True)),
            ],
            options={
                'verbose_name': 'CQRS replica status',
                'verbose_name_plural': 'CQRS replica status',
                'db_table': 'dj_cqrs_replica_status',
            },
        ),
        migrations.CreateModel(
            name='CQRSLagSample',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('cqrs_id', models.CharField(max_length=255)),
                ('minute', models.DateTimeField(db_index=True)),
                ('max_lag', models.FloatField()),
            ],
            options={
                'verbose_name': 'CQRS lag sample',
                'db_table': 'dj_cqrs_lag_sample',
                'constraints': [
                    models.UniqueConstraint(
                        fields=('cqrs_id', 'minute'), name='dj_cqrs_lag_sample_minute'
                    )
                ],
            },
        ),
    ]
