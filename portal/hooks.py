"""Where the extensions' request hooks run: only on the requests they can matter to.

Flask-Login, Flask-Limiter and Flask-WTF each register hooks that run before, after or at
the end of every request, though each has something to do on a few views only. These helpers
find what an extension registered and narrow it, without naming the extension's private
methods.
"""

from collections.abc import Callable


def installed(app, install: Callable) -> list[tuple[dict, Callable]]:
    """Call install(app); return (registry, hook) for each app-wide hook it registered
    (the registry being app.before_request_funcs, after_request_funcs or
    teardown_request_funcs)."""
    registries = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    had = [list(registry.get(None, ())) for registry in registries]
    install(app)
    return [(registry, hook)
            for registry, before in zip(registries, had, strict=True)
            for hook in registry.get(None, ()) if hook not in before]


def only_on(registry: dict, hook: Callable, blueprints: tuple[str, ...]) -> None:
    """Run an app-wide hook on these blueprints' requests only (on none: drop it)."""
    registry[None].remove(hook)
    for blueprint in blueprints:
        registry.setdefault(blueprint, []).append(hook)


def replace(registry: dict, hook: Callable, by: Callable) -> None:
    """Put `by` where an app-wide hook was, so that hooks still run in their order."""
    hooks = registry[None]
    hooks[hooks.index(hook)] = by
