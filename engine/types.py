"""Socket type names and shared UI constants (prefixed: they must not collide
with another pack's types)."""
PREFIX = "InfScale_"
CATEGORY = "inference scaling"

VERIFIER = "INFSCALE_VERIFIER"
SCORES = "INFSCALE_SCORES"
STRATEGY = "INFSCALE_STRATEGY"
VIDEO_SCORING = "INFSCALE_VIDEO_SCORING"
WORKERS = "INFSCALE_WORKERS"
NOISE = "NOISE"  # ComfyUI's own type: our noise objects follow its protocol
