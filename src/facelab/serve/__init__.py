"""facelab.serve"""
