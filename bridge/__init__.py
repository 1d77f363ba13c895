"""The Celery-protocol bridge: Celery task messages in, Dramatiq actors run, Celery results out.

``serialization`` decodes message bodies (json, msgpack, yaml; never pickle), ``protocol``
turns a Celery message into a validated :class:`~bridge.task.CeleryTask`, and
``celery_results`` builds and writes the result documents Celery clients wait for.
"""
