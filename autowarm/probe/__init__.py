"""The probe: short training bursts from the model's initial weights that leave no trace."""
