"""What runs inside a Ray worker for a built-in family: the trainable (`trainable`), the `Trial` it
hands the family (`context`: batched reports, checkpoints that carry their schedule), k-fold in
lock-step (`folds`), the driver's settings for every trial (`settings`), and where each trial ran
(`placement`, written in the worker, read by the driver)."""
