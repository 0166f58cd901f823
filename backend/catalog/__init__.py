"""The catalog: models, personas, online connections (their URLs checked by
providers/netguard.py), a model's routes over several connections and their health
(routing.py), and the registry that turns a model name into a provider. Above accounts
and billing."""
