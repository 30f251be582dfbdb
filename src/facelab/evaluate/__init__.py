"""facelab.evaluate"""
