"""MuonClip: Muon with exact QK-Clip, a CPU-scale training lab and a measured story."""
