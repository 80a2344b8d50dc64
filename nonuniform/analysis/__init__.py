"""What certified boxes say about a model: ``statistics`` (feature robustness, box similarity),
``rank`` (those statistics over files, with figures), ``attribution`` (robustness-based and
Captum rankings and their evaluation), ``explain`` (explanation sets of a boxes file)."""
