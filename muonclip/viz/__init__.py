"""Figures and animations of the MuonClip story: plain data in, matplotlib objects out."""
