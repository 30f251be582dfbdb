"""facelab.embed"""
