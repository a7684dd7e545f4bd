"""The events an organization can be told about. Receivers are written against these names
(docs/WEBHOOKS.md): add new ones, never rename."""


class EventType:
    QUOTA_REACHED = "quota.reached"
    QUOTA_WARNING = "quota.warning"
    SUBSCRIPTION_EXPIRING = "subscription.expiring"
    SUBSCRIPTION_ENDED = "subscription.ended"
    OFFLINE_LICENSE_EXPIRING = "offline_license.expiring"
    SEAT_GRANTED = "seat.granted"
    SEAT_REVOKED = "seat.revoked"
    SESSION_WITHDRAWN = "session.withdrawn"
    MACHINE_DEACTIVATED = "machine.deactivated"
    MEMBER_JOINED = "member.joined"
    MEMBER_REMOVED = "member.removed"
    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"
    # Sent only to the endpoint whose "Send test event" button was pressed; nobody subscribes to it.
    TEST = "webhook.test"

    # What each type means, as the Notifications page and the mails say it.
    DESCRIPTIONS = {
        QUOTA_REACHED: "An activation or a license grant was refused because the quota is used up",
        QUOTA_WARNING: "The day's peak use reached 80% of the quota",
        SUBSCRIPTION_EXPIRING: "A subscription ends in 30, 7 or 1 days",
        SUBSCRIPTION_ENDED: "A subscription has ended",
        OFFLINE_LICENSE_EXPIRING: "An offline license expires in 7 days",
        SEAT_GRANTED: "A Katalon Studio Enterprise license was granted to a member",
        SEAT_REVOKED: "A Katalon Studio Enterprise license was withdrawn",
        SESSION_WITHDRAWN: "An owner or admin ended an engine session",
        MACHINE_DEACTIVATED: "An owner or admin deactivated a machine",
        MEMBER_JOINED: "Somebody accepted an invitation",
        MEMBER_REMOVED: "A member was removed",
        API_KEY_CREATED: "An API key that works in this organization was created",
        API_KEY_REVOKED: "An API key that works in this organization was revoked",
    }
    SUBSCRIBABLE = tuple(DESCRIPTIONS)
    MAILED_BY_DEFAULT = (QUOTA_REACHED, QUOTA_WARNING, SUBSCRIPTION_EXPIRING, SUBSCRIPTION_ENDED)

    @classmethod
    def label(cls, event_type):
        return cls.DESCRIPTIONS.get(event_type, "Test event" if event_type == cls.TEST else event_type)

    @classmethod
    def choices(cls):
        return [(event_type, f"{event_type}: {description}") for event_type, description in cls.DESCRIPTIONS.items()]
