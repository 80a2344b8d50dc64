"""Linear relaxations, one class per nonlinear operation: elementwise activations
(``activations``), max-pooling (``pooling``) and the gate products of recurrent cells (``gates``)."""
