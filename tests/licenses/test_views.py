from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from licenses import actions, signing
from licenses.models import LicensedUser, OfflineLicense
from organizations.models import Membership, User
from sessions_app.models import EndReason, EngineSession, Machine
from tests import factories

HTMX = {"HX-Request": "true"}


def url(name, pool, *args):
    return reverse(name, args=[pool.organization.public_id, pool.product, *args])


def product_url(pool):
    return url("licenses_product", pool)


# Reading


def test_the_licenses_link_opens_the_first_product(owner_client, organization, kse_pool, re_pool):
    """/licenses/ goes to the organization's first product tab."""
    response = owner_client.get(reverse("licenses", args=[organization.public_id]))
    assert response.status_code == 302
    assert response.url == product_url(kse_pool)


def test_an_organization_without_pools_says_so(owner_client, organization):
    """No pool: the page explains that nothing is provisioned instead of failing."""
    response = owner_client.get(reverse("licenses", args=[organization.public_id]))
    assert response.status_code == 200
    assert "has no license subscription yet" in response.text


def test_the_owner_sees_every_section_and_figure(owner_client, kse_pool, re_pool, members):
    """Tabs for both products, the subscription figures, and the controls of each list."""
    actions.grant_licenses(pool=kse_pool, users=members[:1], actor=None)
    session = factories.EngineSessionFactory(pool=kse_pool, user=members[0], hostname="qa-laptop")
    factories.OfflineLicenseFactory(pool=kse_pool, machine_id="air-gapped-1")
    response = owner_client.get(product_url(kse_pool))
    assert response.status_code == 200
    page = response.text
    for text in [
        "Katalon Studio Enterprise (KSE)",
        "Katalon Runtime Engine (RE)",
        "Subscription",
        "Licensed users",
        "Assign licenses",
        "Online licenses",
        "Registered machines",
        "Offline licenses",
        "qa-laptop",
        session.machine.machine_id,
        "air-gapped-1",
        "/api/v1/offline-licenses/public-key",
    ]:
        assert text in page, text
    usage = response.context["usage"]
    assert (usage.quota, usage.licensed_users, usage.unexpired_offline, usage.available) == (3, 1, 1, 1)


def test_a_member_sees_figures_and_their_own_license_without_controls(member_client, member_user, kse_pool):
    """Read-only: the figures and 'you are a licensed user', no forms and no other person's data."""
    LicensedUser.objects.create(pool=kse_pool, user=member_user)
    someone = factories.EngineSessionFactory(pool=kse_pool, hostname="someone-elses-host")
    mine = factories.EngineSessionFactory(pool=kse_pool, user=member_user, hostname="my-host")
    response = member_client.get(product_url(kse_pool))
    assert response.status_code == 200
    page = response.text
    assert "You are a licensed user" in page
    assert mine.machine.machine_id in page
    assert someone.machine.machine_id not in page
    for control in ["Assign license", "Revoke", "End session", "Deactivate", "Create offline license"]:
        assert control not in page, control


def test_an_unknown_product_is_not_found(owner_client, organization):
    """Only KSE and RE exist; the URL of anything else is a 404."""
    assert owner_client.get(reverse("licenses_product", args=[organization.public_id, "XYZ"])).status_code == 404


def test_another_organizations_licenses_are_not_found(owner_client, rival_pool):
    """The pages of an organization you do not belong to are a 404, not a 403."""
    assert owner_client.get(product_url(rival_pool)).status_code == 404
    response = owner_client.post(url("licenses_grant", rival_pool), {"users": []})
    assert response.status_code == 404


def test_another_organizations_session_and_machine_are_not_found(owner_client, re_pool, other_organization):
    """A session or machine id from another pool is a 404 under this organization's URL."""
    rival = factories.LicensePoolFactory(organization=other_organization, product="RE")
    session = factories.EngineSessionFactory(pool=rival)
    assert owner_client.post(url("licenses_end_session", re_pool, session.public_id)).status_code == 404
    assert owner_client.post(url("licenses_deactivate_machine", re_pool, session.machine.pk)).status_code == 404
    assert EngineSession.objects.get(pk=session.pk).is_live


@pytest.mark.parametrize(
    ("name", "args"),
    [("licenses_grant", []), ("licenses_revoke", []), ("licenses_offline_create", [])],
)
def test_a_members_post_to_a_management_url_is_forbidden(member_client, member_user, kse_pool, name, args):
    """Members can only look: every write answers 403 and changes nothing."""
    response = member_client.post(url(name, kse_pool, *args), {"users": [member_user.pk], "machine_id": "m1"})
    assert response.status_code == 403
    assert not LicensedUser.objects.exists()
    assert not OfflineLicense.objects.exists()


def test_a_member_cannot_end_sessions_deactivate_machines_or_download(member_client, re_pool):
    """The row controls are 403 for members too."""
    session = factories.EngineSessionFactory(pool=re_pool)
    offline = factories.OfflineLicenseFactory(pool=re_pool)
    assert member_client.post(url("licenses_end_session", re_pool, session.public_id)).status_code == 403
    assert member_client.post(url("licenses_deactivate_machine", re_pool, session.machine.pk)).status_code == 403
    assert member_client.get(url("licenses_offline_download", re_pool, offline.license_id)).status_code == 403
    assert EngineSession.objects.get(pk=session.pk).is_live


def test_writes_refuse_get(owner_client, kse_pool):
    """Management URLs only take POST."""
    assert owner_client.get(url("licenses_grant", kse_pool)).status_code == 405


# Granting and revoking


def test_granting_without_javascript_redirects_with_a_message(owner_client, kse_pool, members):
    """A plain form post grants, then redirects to the tab with a confirmation."""
    response = owner_client.post(url("licenses_grant", kse_pool), {"users": [members[0].pk, members[1].pk]})
    assert response.status_code == 302
    assert response.url == product_url(kse_pool)
    assert LicensedUser.objects.active().count() == 2
    page = owner_client.get(response.url).text
    assert f"Licensed {members[0].display_name}" in page


def test_granting_with_htmx_returns_the_list_and_the_figures_out_of_band(owner_client, kse_pool, members):
    """The licensed users section comes back with the subscription panel as an out-of-band swap."""
    response = owner_client.post(url("licenses_grant", kse_pool), {"users": [members[0].pk]}, headers=HTMX)
    assert response.status_code == 200
    page = response.text
    assert page.lstrip().startswith('<section id="licensed-users"')
    assert '<section id="subscription" class="card" aria-labelledby="subscription-title" hx-swap-oob="true">' in page
    assert response.context["usage"].available == 2
    assert members[0].email in page
    assert "<html" not in page


def test_a_refused_grant_is_shown_beside_the_form(owner_client, kse_pool, members):
    """Over the quota: the message is in the section (htmx) or on the re-rendered page (no JS); nothing is granted."""
    chosen = {"users": [m.pk for m in members[:4]]}
    response = owner_client.post(url("licenses_grant", kse_pool), chosen, headers=HTMX)
    assert response.status_code == 200
    assert "Only 3 of 3 licenses are available in Acme QA" in response.text
    assert 'id="grant-refusal"' in response.text
    response = owner_client.post(url("licenses_grant", kse_pool), chosen)
    assert response.status_code == 200
    assert "Only 3 of 3 licenses are available in Acme QA" in response.text
    assert "<html" in response.text
    assert not LicensedUser.objects.exists()


def test_granting_nobody_or_a_stranger_is_a_clear_error(owner_client, kse_pool):
    """Bad input re-renders the form with a specific message, never a 500."""
    response = owner_client.post(url("licenses_grant", kse_pool), {}, headers=HTMX)
    assert "Choose at least one member." in response.text
    stranger = factories.UserFactory()
    response = owner_client.post(url("licenses_grant", kse_pool), {"users": [stranger.pk]}, headers=HTMX)
    assert "Only active members of this organization can be licensed." in response.text
    response = owner_client.post(url("licenses_grant", kse_pool), {"users": ["not-a-number"]}, headers=HTMX)
    assert response.status_code == 200
    assert not LicensedUser.objects.exists()


@pytest.mark.parametrize("name", ["licenses_grant", "licenses_revoke"])
def test_an_id_too_large_for_the_database_is_a_clear_error(owner_client, kse_pool, members, name):
    """An id beyond 64 bits names nobody: the form says so, with or without htmx, and nothing changes."""
    actions.grant_licenses(pool=kse_pool, users=members[:1], actor=None)
    for headers in (HTMX, {}):
        response = owner_client.post(url(name, kse_pool), {"users": ["99999999999999999999999"]}, headers=headers)
        assert response.status_code == 200
        refusal = "Only active members" if name == "licenses_grant" else "no longer holds a license"
        assert refusal in response.text
    assert list(LicensedUser.objects.active().values_list("user", flat=True)) == [members[0].pk]


def test_ids_no_engine_or_license_could_have_are_not_found(owner_client, re_pool):
    """A session or license id with a NUL byte (PostgreSQL refuses such strings) is a 404, not a 500."""
    path = f"/o/{re_pool.organization.public_id}/licenses/RE/sessions/s%00x/end/"
    assert owner_client.post(path).status_code == 404
    assert owner_client.get(f"/o/{re_pool.organization.public_id}/licenses/RE/offline/ol%00x.lic").status_code == 404
    assert owner_client.get("/o/1%002/licenses/RE/").status_code == 404


def test_runtime_engine_has_no_licensed_users(owner_client, re_pool, members):
    """Granting on the RE tab is a 404: RE licenses belong to every member."""
    assert owner_client.post(url("licenses_grant", re_pool), {"users": [members[0].pk]}).status_code == 404


def test_revoking_several_at_once_with_htmx(owner_client, kse_pool, members):
    """Checked licensed users lose their licenses; the figures come back out-of-band."""
    actions.grant_licenses(pool=kse_pool, users=members[:3], actor=None)
    session = factories.EngineSessionFactory(pool=kse_pool, user=members[0])
    response = owner_client.post(
        url("licenses_revoke", kse_pool), {"users": [members[0].pk, members[1].pk]}, headers=HTMX
    )
    assert response.status_code == 200
    assert "Withdrew the license of" in response.text
    assert 'id="subscription"' in response.text and 'id="online-licenses"' in response.text
    assert list(LicensedUser.objects.active().values_list("user", flat=True)) == [members[2].pk]
    assert EngineSession.objects.get(pk=session.pk).end_reason == EndReason.WITHDRAWN


def test_revoking_without_javascript(owner_client, kse_pool, members):
    """The row's Revoke button is a plain form post too."""
    actions.grant_licenses(pool=kse_pool, users=members[:1], actor=None)
    response = owner_client.post(url("licenses_revoke", kse_pool), {"users": [members[0].pk]})
    assert response.status_code == 302
    assert not LicensedUser.objects.active().exists()


def test_revoking_someone_without_a_license_says_so(owner_client, kse_pool, members):
    """A stale page: the message says the person no longer holds a license."""
    response = owner_client.post(url("licenses_revoke", kse_pool), {"users": [members[0].pk]}, headers=HTMX)
    assert "no longer holds a license" in response.text


# Sessions and machines


def test_ending_a_session_in_place(admin_client, re_pool):
    """An admin ends a session: the list and the figures are swapped, the license is free."""
    session = factories.EngineSessionFactory(pool=re_pool)
    response = admin_client.post(url("licenses_end_session", re_pool, session.public_id), headers=HTMX)
    assert response.status_code == 200
    assert "its license is free" in response.text
    assert 'hx-swap-oob="true"' in response.text
    assert EngineSession.objects.get(pk=session.pk).end_reason == EndReason.WITHDRAWN


def test_ending_a_session_without_javascript(admin_client, re_pool):
    """Plain post, redirect, message."""
    session = factories.EngineSessionFactory(pool=re_pool)
    response = admin_client.post(url("licenses_end_session", re_pool, session.public_id), follow=True)
    assert "its license is free" in response.text
    assert not EngineSession.objects.get(pk=session.pk).is_live


def test_deactivating_a_machine(admin_client, re_pool):
    """Its sessions end with machine_deactivated and it leaves the list."""
    session = factories.EngineSessionFactory(pool=re_pool)
    response = admin_client.post(url("licenses_deactivate_machine", re_pool, session.machine.pk), headers=HTMX)
    assert response.status_code == 200
    assert "its machine slot is free" in response.text
    assert not Machine.objects.get(pk=session.machine.pk).is_registered
    assert EngineSession.objects.get(pk=session.pk).end_reason == EndReason.MACHINE_DEACTIVATED


def test_long_lists_paginate(owner_client, re_pool):
    """Thirty live sessions: the first page shows 25 and links to the next."""
    factories.EngineSessionFactory.create_batch(30, pool=re_pool)
    response = owner_client.get(product_url(re_pool))
    assert len(response.context["sessions"]) == 25
    assert "?sessions_page=2" in response.text
    response = owner_client.get(product_url(re_pool) + "?sessions_page=2")
    assert len(response.context["sessions"]) == 5
    assert owner_client.get(product_url(re_pool) + "?sessions_page=banana").status_code == 200


# Offline licenses


def test_creating_and_downloading_an_offline_license(owner_client, re_pool):
    """The file downloads as RE_<machine id>.lic and verifies."""
    expires_on = (timezone.now() + timedelta(days=10)).date()
    response = owner_client.post(
        url("licenses_offline_create", re_pool),
        {"machine_id": "lab-01", "expires_on": expires_on.isoformat(), "confirmed": "yes"},
    )
    assert response.status_code == 302
    offline = OfflineLicense.objects.get()
    assert offline.expires_at.date() == expires_on
    download = owner_client.get(url("licenses_offline_download", re_pool, offline.license_id))
    assert download.status_code == 200
    assert download["Content-Disposition"] == 'attachment; filename="RE_lab-01.lic"'
    assert signing.verify_license_file(download.content.decode())["machine_id"] == "lab-01"


def test_creating_an_offline_license_with_htmx_shows_its_download_link(owner_client, re_pool):
    """The section comes back with the new file's link, and the figures out-of-band."""
    expires_on = (timezone.now() + timedelta(days=10)).date().isoformat()
    response = owner_client.post(
        url("licenses_offline_create", re_pool),
        {"machine_id": "lab-02", "expires_on": expires_on, "confirmed": "yes"},
        headers=HTMX,
    )
    assert "Download RE_lab-02.lic" in response.text
    assert response.context["usage"].unexpired_offline == 1


def test_offline_license_refusals_are_shown_beside_the_form(owner_client, re_pool):
    """Past the subscription, a bad machine id or a full pool: the form says why and nothing is issued."""
    late = (re_pool.expires_at + timedelta(days=2)).date().isoformat()
    response = owner_client.post(url("licenses_offline_create", re_pool), {"machine_id": "m1", "expires_on": late})
    assert response.status_code == 200
    assert "cannot outlast the subscription" in response.text
    soon = (timezone.now() + timedelta(days=2)).date().isoformat()
    response = owner_client.post(url("licenses_offline_create", re_pool), {"machine_id": "bad id", "expires_on": soon})
    assert "Use 1 to 128 characters" in response.text
    response = owner_client.post(url("licenses_offline_create", re_pool), {"machine_id": "m1", "expires_on": "soon"})
    assert "Enter a valid date." in response.text
    factories.EngineSessionFactory.create_batch(3, pool=re_pool)
    response = owner_client.post(
        url("licenses_offline_create", re_pool),
        {"machine_id": "m1", "expires_on": soon, "confirmed": "yes"},
        headers=HTMX,
    )
    assert "No license is available in Acme QA" in response.text
    assert not OfflineLicense.objects.exists()


def test_an_offline_license_on_the_subscriptions_last_day_ends_with_it(owner_client, re_pool):
    """Choosing the last day gives the subscription's own end, not a refusal."""
    last_day = re_pool.expires_at.date().isoformat()
    owner_client.post(
        url("licenses_offline_create", re_pool), {"machine_id": "m1", "expires_on": last_day, "confirmed": "yes"}
    )
    assert OfflineLicense.objects.get().expires_at == re_pool.expires_at


def test_another_pools_offline_license_is_not_found(owner_client, re_pool, kse_pool):
    """Download URLs are scoped to the pool in the URL."""
    offline = factories.OfflineLicenseFactory(pool=kse_pool)
    assert owner_client.get(url("licenses_offline_download", re_pool, offline.license_id)).status_code == 404


# Query counts


def fill(pool, *, members, machines, live_sessions, licensed):
    """Bulk data for one pool: members of its organization, registered machines, live sessions on them."""
    organization = pool.organization
    now = timezone.now()
    users = User.objects.bulk_create(
        [User(email=f"bulk-{pool.pk}-{n}@example.com", name=f"Bulk {n:05d}", password="!") for n in range(members)]
    )
    Membership.objects.bulk_create([Membership(organization=organization, user=user) for user in users])
    LicensedUser.objects.bulk_create([LicensedUser(pool=pool, user=user) for user in users[:licensed]])
    machine_rows = Machine.objects.bulk_create(
        [
            Machine(pool=pool, machine_id=f"bulk-{n:05d}", hostname=f"host-{n}", user=users[n % members])
            for n in range(machines)
        ]
    )
    EngineSession.objects.bulk_create(
        [
            EngineSession(
                pool=pool,
                machine=machine_rows[n],
                user=users[n % members],
                lease_expires_at=now + timedelta(minutes=5),
            )
            for n in range(live_sessions)
        ]
    )
    factories.OfflineLicenseFactory.create_batch(3, pool=pool)


def count_queries(client, path):
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200
    return len(captured.captured_queries)


MAX_PAGE_QUERIES = 16


@pytest.mark.parametrize("product", ["KSE", "RE"])
def test_the_page_takes_the_same_queries_for_ten_rows_or_thousands(
    owner_client, owner, organization, other_organization, product, django_assert_max_num_queries
):
    """2,000 members, 2,000 machines and 500 live sessions cost no more queries than ten of each."""
    small = factories.LicensePoolFactory(organization=other_organization, product=product, quota=5000)
    Membership.objects.create(organization=other_organization, user=owner, role="admin")
    fill(small, members=10, machines=10, live_sessions=10, licensed=10)
    big = factories.LicensePoolFactory(organization=organization, product=product, quota=5000)
    fill(big, members=2000, machines=2000, live_sessions=500, licensed=500)

    small_count = count_queries(owner_client, product_url(small))
    with django_assert_max_num_queries(MAX_PAGE_QUERIES):
        response = owner_client.get(product_url(big))
    assert response.context["usage"].live_sessions == 500
    assert response.context["machines"].paginator.count == 2000
    assert count_queries(owner_client, product_url(big)) == small_count


def test_the_htmx_grant_takes_a_fixed_number_of_queries(owner_client, organization, kse_pool, members):
    """Granting in a big organization costs no query per member or seat."""
    fill(kse_pool, members=300, machines=50, live_sessions=20, licensed=0)
    kse_pool.quota = 1000
    kse_pool.save()
    with CaptureQueriesContext(connection) as small:
        owner_client.post(url("licenses_grant", kse_pool), {"users": [members[0].pk]}, headers=HTMX)
    bulk_users = list(User.objects.filter(email__startswith="bulk-")[:200])
    actions.grant_licenses(pool=kse_pool, users=bulk_users, actor=None)
    with CaptureQueriesContext(connection) as big:
        owner_client.post(url("licenses_grant", kse_pool), {"users": [members[1].pk]}, headers=HTMX)
    assert len(big.captured_queries) == len(small.captured_queries)


def test_an_htmx_answer_of_several_sections_reads_the_switcher_once(owner_client, organization, kse_pool, members):
    """A revoke answers four fragments (licensed users, subscription, sessions, machines); the
    organization switcher's memberships are read once for the request, not once per fragment."""
    actions.grant_licenses(pool=kse_pool, users=members[:2], actor=None)
    with CaptureQueriesContext(connection) as captured:
        response = owner_client.post(url("licenses_revoke", kse_pool), {"users": [members[0].pk]}, headers=HTMX)
    assert response.status_code == 200
    switcher_reads = [
        query["sql"]
        for query in captured.captured_queries
        if query["sql"].startswith('SELECT "organizations_membership"')
        and 'ORDER BY "organizations_organization"."name"' in query["sql"]
    ]
    assert len(switcher_reads) <= 1, switcher_reads


def test_each_machine_shows_how_many_of_its_sessions_are_live(owner_client, re_pool, owner):
    """A machine's live sessions count those holding a license now: not lapsed leases, not ended
    sessions, not another machine's."""
    now = timezone.now()
    busy, quiet = factories.MachineFactory(pool=re_pool), factories.MachineFactory(pool=re_pool)
    for _ in range(2):
        factories.EngineSessionFactory(pool=re_pool, machine=busy, user=owner)
    factories.EngineSessionFactory(pool=re_pool, machine=busy, user=owner, lease_expires_at=now - timedelta(seconds=1))
    factories.EngineSessionFactory(pool=re_pool, machine=busy, user=owner, ended_at=now, end_reason=EndReason.RELEASED)
    factories.EngineSessionFactory(pool=re_pool, machine=quiet, user=owner, lease_expires_at=now - timedelta(hours=1))
    machines = {machine.pk: machine for machine in owner_client.get(product_url(re_pool)).context["machines"]}
    assert machines[busy.pk].live_session_count == 2
    assert machines[quiet.pk].live_session_count == 0


# The online licenses refresh themselves (every 45 s): session, user, organization with membership,
# the pool, the page of sessions and its count; a whole page takes MAX_PAGE_QUERIES.
SESSIONS_REFRESH_QUERIES = 7


def test_the_live_sessions_refresh_is_one_section_in_a_fixed_number_of_queries(
    owner_client, re_pool, django_assert_max_num_queries
):
    """htmx's poll gets the online licenses section alone, with each session's short id and engine
    version and when it was drawn, for as many queries with 60 sessions as with one."""
    factories.EngineSessionFactory(pool=re_pool, engine_version="10.2.0")
    path = product_url(re_pool) + "?section=sessions"
    assert "10.2.0" in owner_client.get(path, headers=HTMX).text
    one = count_queries_htmx(owner_client, path)
    sessions = factories.EngineSessionFactory.create_batch(59, pool=re_pool, engine_version="9.7.2")
    with django_assert_max_num_queries(SESSIONS_REFRESH_QUERIES):
        response = owner_client.get(path, headers=HTMX)
    html = response.text
    assert html.lstrip().startswith('<section id="online-licenses"') and 'id="machines"' not in html
    assert 'hx-trigger="every 45s' in html and "Updated <time" in html
    assert f'<abbr title="{sessions[-1].public_id}">{sessions[-1].short_id}</abbr>' in html
    assert "9.7.2" in html
    assert count_queries_htmx(owner_client, path) == one
    assert "Vary" in response.headers and "HX-Request" in response.headers["Vary"]


def test_without_htmx_the_refresh_address_is_the_whole_page(owner_client, re_pool):
    """Opened directly (or with JavaScript off) the section's address shows the whole page."""
    response = owner_client.get(product_url(re_pool) + "?section=sessions")
    assert response.status_code == 200 and "<html" in response.text and 'id="machines"' in response.text


def test_members_cannot_poll_the_managers_section(member_client, re_pool):
    """A member's page has no online licenses list, so its refresh gives them the page, not the list."""
    factories.EngineSessionFactory(pool=re_pool)
    response = member_client.get(product_url(re_pool) + "?section=sessions", headers=HTMX)
    assert 'id="online-licenses"' not in response.text


def count_queries_htmx(client, path):
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, headers=HTMX)
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_pages_that_also_answer_htmx_with_a_fragment_tell_caches_to_keep_them_apart(owner_client, kse_pool, members):
    """The assign chooser and a confirmation answer the same address with a page or, for htmx, a
    fragment: a browser going back must never be shown a bare fragment as the page."""
    actions.grant_licenses(pool=kse_pool, users=members[:1], actor=None)
    asking = url("licenses_revoke", kse_pool) + f"?users={members[0].pk}"
    chooser = reverse("licenses_assign", args=[kse_pool.organization.public_id, "KSE"])
    for address in (asking, chooser):
        for headers in ({}, HTMX):
            response = owner_client.get(address, headers=headers)
            assert response.status_code == 200
            assert "HX-Request" in response["Vary"], address
