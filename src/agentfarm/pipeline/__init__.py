"""The AFK pipeline (labelled issues -> runs -> pull requests). Being built: so far the forge
clients and webhook handling (:mod:`agentfarm.pipeline.forges`); nothing imports this layer yet."""
