"""facelab.models"""
