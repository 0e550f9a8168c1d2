"""ShapeWorld, the embedded toy world (shared/design/shapeworld.md): six procedural shapes in six
colours whose true objects are known. It is the data set of the shipped teacher and the ground truth
of the evaluation; the product core never imports it, it registers its evaluator
(``evaluator.register_evaluator``) with ``threed.evaluation``.

    canon            the shapes' signed distances, colours, captions and prompts
    render           ray-cast images of the canon and the teacher's data set
    evaluator        ground-truth meshes and the scores of a run's mesh
    train_teacher    trains the ShapeWorld teacher (python -m threed.shapeworld.train_teacher)
    teacher_quality  how good a teacher is (python -m threed.shapeworld.teacher_quality)

``python -m threed.shapeworld`` generates the data set, scores a mesh, and writes the true meshes.
"""
