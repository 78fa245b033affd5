"""Evaluation metrics as the official LUMIR evaluator computes them: Dice, HD95, TRE, NDV."""
