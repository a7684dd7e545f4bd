"""What the apps above organizations (licenses, sessions_app) act on when a change here has
consequences in their data. Organizations never imports them: it announces the change, they do
their part.

Receivers run synchronously inside the sender's transaction, after its locks and checks, so what
they write commits or rolls back with the change, and an exception in one undoes all of it.
"""

from django.dispatch import Signal

# Sent by organizations.actions.remove_member with the organization row and the membership row
# locked, before the membership is marked removed. Arguments: `organization`, `user` (the person
# leaving), `actor`, `now` (the removal's timestamp). Each receiver ends what the person holds in
# that organization in its app, taking pool locks (pools in id order, never an organization lock
# after them), and returns a dict of counts for the removal's audit event.
member_removed = Signal()
