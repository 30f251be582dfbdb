"""facelab.data"""
