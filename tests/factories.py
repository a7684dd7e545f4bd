from datetime import timedelta

import factory
from django.utils import timezone

from licenses.models import LicensedUser, LicensePool, OfflineLicense
from organizations.models import Invitation, Membership, Organization, User
from sessions_app.models import ApiKey, EngineSession, Machine, QueueTicket, hash_api_key

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"person{n}@example.com")
    name = factory.Faker("name")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class OrganizationFactory(factory.django.DjangoModelFactory):
    """An organization with an owner (pass owner=... or get a new person)."""

    class Meta:
        model = Organization
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Organization {n}")

    @factory.post_generation
    def owner(obj, create, extracted, **kwargs):
        if create:
            Membership.objects.create(organization=obj, user=extracted or UserFactory(), role="owner")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = "member"


class InvitationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Invitation

    organization = factory.SubFactory(OrganizationFactory)
    email = factory.Sequence(lambda n: f"invitee{n}@example.com")
    role = "member"


class LicensePoolFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LicensePool

    organization = factory.SubFactory(OrganizationFactory)
    product = "RE"
    quota = 5
    machine_quota = factory.LazyAttribute(lambda pool: pool.quota)
    starts_at = factory.LazyFunction(lambda: timezone.now() - timedelta(days=30))
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=335))
    lease_seconds = 300


class LicensedUserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LicensedUser

    pool = factory.SubFactory(LicensePoolFactory, product="KSE")
    user = factory.SubFactory(UserFactory)


class MachineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Machine

    pool = factory.SubFactory(LicensePoolFactory)
    machine_id = factory.Sequence(lambda n: f"machine-{n:05d}")
    hostname = factory.Sequence(lambda n: f"agent-{n}.ci.example.com")


class EngineSessionFactory(factory.django.DjangoModelFactory):
    """A live session unless given ended_at/end_reason or a past lease."""

    class Meta:
        model = EngineSession

    pool = factory.SubFactory(LicensePoolFactory)
    machine = factory.SubFactory(MachineFactory, pool=factory.SelfAttribute("..pool"))
    user = factory.SubFactory(UserFactory)
    hostname = factory.LazyAttribute(lambda s: s.machine.hostname)
    started_at = factory.LazyFunction(timezone.now)
    last_heartbeat_at = factory.LazyAttribute(lambda s: s.started_at)
    lease_expires_at = factory.LazyAttribute(lambda s: timezone.now() + timedelta(seconds=s.pool.lease_seconds))


class QueueTicketFactory(factory.django.DjangoModelFactory):
    """A ticket waiting in its pool's line since now, unless given other times or an outcome."""

    class Meta:
        model = QueueTicket

    pool = factory.SubFactory(LicensePoolFactory)
    user = factory.SubFactory(UserFactory)
    machine_id = factory.Sequence(lambda n: f"waiting-{n:05d}")
    hostname = factory.LazyAttribute(lambda t: f"{t.machine_id}.ci.example.com")
    joined_at = factory.LazyFunction(timezone.now)
    last_polled_at = factory.LazyAttribute(lambda t: t.joined_at)
    poll_before = factory.LazyFunction(lambda: timezone.now() + timedelta(seconds=32))
    expires_at = factory.LazyAttribute(lambda t: t.joined_at + timedelta(minutes=30))


class OfflineLicenseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OfflineLicense

    pool = factory.SubFactory(LicensePoolFactory)
    machine_id = factory.Sequence(lambda n: f"offline-{n:05d}")
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=30))
    file_content = "{}"


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """An API key; the raw key is on `obj.raw_key` (only in tests: the portal never keeps it)."""

    class Meta:
        model = ApiKey

    raw_key = factory.LazyFunction(ApiKey.generate)
    user = factory.SubFactory(UserFactory)
    name = "CI agent"
    prefix = factory.LazyAttribute(lambda k: k.raw_key[:12])
    key_hash = factory.LazyAttribute(lambda k: hash_api_key(k.raw_key))

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        raw_key = kwargs.pop("raw_key", None)
        obj = super()._create(model_class, *args, **kwargs)
        obj.raw_key = raw_key
        return obj
