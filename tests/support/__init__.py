"""What the tests share: builders, publishers, readers, waits and infrastructure.

- ``system``: the three services of one test in-process (``System``, ``running_systems``);
- ``events``: one builder per event a test publishes itself (``received``, ``resolved``);
- ``kafka``: publishing as a service would, reading topics, counting handled events;
- ``http``: bearer tokens, complaint request bodies, intake's answers;
- ``clock``: aware UTC datetimes and a manual clock;
- ``waits``: ``eventually``, polling with a deadline;
- ``routing`` / ``followup``: reading each service's state in tests;
- ``infrastructure``, ``private_infrastructure``, ``tcp_proxy``, ``identity_provider``:
  the real Kafka and MongoDB of the session, private ones for fault tests, a severable
  proxy and a local OIDC provider.

Test modules import from here, never from each other.
"""
