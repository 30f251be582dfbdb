"""facelab.facedb"""
