"""The engine: the layer between the node classes (``nodes/``) and the ComfyUI-free core (``search/``,
``verifiers/``).  It talks to ComfyUI: the sampling plan, the host the algorithms run on, the devices and their
lanes, the worker transport and fingerprint, the version shims (``compat.py``).  Nothing here imports ``nodes/``;
importing this package itself imports no ComfyUI (``workers.py`` and ``endpoints.py`` need none)."""
