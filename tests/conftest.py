import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # search/ and verifiers/ import as top-level packages in tests

pytest_plugins = ["comfy_server"]
