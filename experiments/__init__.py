"""Research harnesses on the real data in ../shared: does the model learn, is its encoder worth having, and why."""
