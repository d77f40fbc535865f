"""The AFK pipeline (labelled issues -> runs -> pull requests). Not built yet; the layer is
reserved so the import contracts hold from the start."""
