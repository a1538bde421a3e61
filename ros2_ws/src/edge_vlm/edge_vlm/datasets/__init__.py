"""Data sets in their published layout (DVS128 Gesture)."""
