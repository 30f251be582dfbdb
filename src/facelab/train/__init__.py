"""facelab.train"""
