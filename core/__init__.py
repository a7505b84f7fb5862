"""genlab: generative models built and trained from scratch."""
