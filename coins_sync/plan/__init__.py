"""The plan: what apply would do, why it may be refused, and how it is shown and saved.

- :mod:`~coins_sync.plan.reconcile`: the pure reconciler ``plan(rules, state) -> Plan``,
  its typed changes, and the safety rules a plan is checked against;
- :mod:`~coins_sync.plan.drift`: ``--refresh``, the server read back, and its drift;
- :mod:`~coins_sync.plan.render`: the text, JSON and Markdown renderers;
- :mod:`~coins_sync.plan.markdown`: inert, bounded Markdown for values from outside;
- :mod:`~coins_sync.plan.saved`: ``plan --out`` files, read back and refused once stale.

Nothing is imported here, so importing one part loads only what that part needs.
"""
