"""Face analysis of photos and videos: detect -> choose -> crop -> attributes -> embed -> lookup."""

from facelab.analyze.analyzer import AnalyzedFace, FaceAnalyzer

__all__ = ["AnalyzedFace", "FaceAnalyzer"]
