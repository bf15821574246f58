"""LLM Architecture Explorer: the Django apps (models, views, API, consumers, tasks, services).
The project wiring (settings, URLs, ASGI, Celery) is the ``config`` package; the model maths
lives in the framework-free ``engine`` package."""
