"""The MuonClip story: measured runs -> figures, GIFs, notebook and an HTML report."""
