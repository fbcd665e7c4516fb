"""unicon ClientApp: one hospital site training its task's skill."""
