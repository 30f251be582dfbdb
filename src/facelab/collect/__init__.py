"""facelab.collect"""
