"""The image-shift families held out from trajectory collection.

No collected trajectory ever shows these families, so the held-out domains that pair an unseen
script with one of them (hebrew-invert, braille-clutter, tifinagh-elastic) measure how far the
drift generalises, not what it memorised. Kept free of torch and numpy so the config schema can
refuse them in `collect.shifts` without importing the image code.
"""

HELD_OUT_SHIFTS: frozenset[str] = frozenset({"invert", "clutter", "elastic"})
