from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ('dj_cqrs', '0004_replica_status'),
    ]

    operations = [
        migrations.CreateModel(
            name='Status',
            fields=[
                ('id', models.AutoField(primary_key=True, serialize=False)),
            ],
            options={
                'verbose_name': 'replication status',
                'verbose_name_plural': 'replication status',
                'managed': False,
                'default_permissions': ('view',),
            },
        ),
    ]
