"""Label cleaning: rank the labels most likely wrong from out-of-fold probabilities
(confident learning, via cleanlab), show them on an HTML page with thumbnails, and export a
corrections CSV for a person to review (applied by facelab.data.corrections)."""
