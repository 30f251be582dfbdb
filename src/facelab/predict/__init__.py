"""facelab.predict"""
