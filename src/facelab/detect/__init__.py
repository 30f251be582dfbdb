"""facelab.detect"""
