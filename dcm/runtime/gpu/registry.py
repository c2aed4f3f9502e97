from dcm.runtime.kernel import Registry, registrar

REGISTRY: Registry = {}
register = registrar(REGISTRY)
